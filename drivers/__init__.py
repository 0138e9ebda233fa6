"""Device drivers: each turns one device kind's bytes into events, and outcomes into feedback."""
