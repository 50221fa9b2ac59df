"""The training loop behind `snowcloud.train.train_experiment`: device and precision, resumable state,
stop signals, history and curves."""
