"""Simulated devices and a simulated central system, runnable alone and used by the tests."""
