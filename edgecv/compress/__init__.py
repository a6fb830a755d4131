"""Model compression on the workstation: structured channel pruning and knowledge distillation."""
