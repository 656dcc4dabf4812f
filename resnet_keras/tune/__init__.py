"""Layer 9: hyperparameter search with KerasTuner. Imports the layers below it."""
