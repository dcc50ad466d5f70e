from rpg_hf.cli import main

main()
