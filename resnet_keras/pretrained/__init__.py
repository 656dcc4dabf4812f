"""Layer 6: pretrained weights: the weight-set registry, the keras.applications, torchvision/timm
state-dict and keras-hub formats, and fine-tuning sources. Imports the layers below it.
"""
