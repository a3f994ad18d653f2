"""Network definitions that torchxrayvision does not provide (see `radtriage.model.architectures`)."""
