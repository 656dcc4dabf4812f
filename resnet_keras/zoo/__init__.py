"""Layer 3: the model zoo: residual block and stage factories (blocks), the CIFAR and ImageNet families
(models), and loading saved models (portable). Imports `core` and `config`.
"""
