"""The `resnet-keras` command: a thin click layer over the Python API.

`cli` is the group of app.py with every command added; `main` is the console script. Each command
module parses its options, builds configs (with the option table, resnet_keras.config.options),
calls the library and leaves its errors to the group, which prints one line and exits with 2 for a
user mistake, 1 for a failed run.

    app.py      the group, error mapping, Ctrl-C, the quiet TensorFlow import
    options.py  options from the table, --config FILE, shared helpers
    weights.py  info, convert          train.py  train, evaluate
    serve.py    export, predict, export-features
    tune.py     tune                   bench.py  benchmark          data.py  prepare
"""

from __future__ import annotations

from resnet_keras.cli import bench, data, serve, train, tune, weights
from resnet_keras.cli.app import cli, main

for _command in (
    weights.info,
    weights.convert,
    train.train,
    train.evaluate,
    serve.export,
    serve.predict,
    serve.export_features,
    bench.benchmark,
    tune.tune,
    data.prepare,
):
    cli.add_command(_command)

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
