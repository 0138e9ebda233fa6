"""Device drivers: each turns one kind of device's bytes into typed events and back into feedback."""
