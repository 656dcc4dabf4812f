"""`python -m resnet_keras.cli`: the `resnet-keras` command."""

from resnet_keras.cli.main import main

main()
