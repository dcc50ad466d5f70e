"""What the recipes, the demo and the science sweep share: datasets, the one training loop, the
one evaluation, optimizers and schedules, ObjectNet, and the DoF-scaling fit.  The core library
(ring math, modules, transformers/timm glue) never imports this package."""
