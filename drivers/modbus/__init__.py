"""Modbus TCP / RTU conveyor sensors: polled points, readings by exception, alarms on edges."""
