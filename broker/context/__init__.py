"""Context management (issue 16): what the broker does so a model's context holds more of what matters."""
