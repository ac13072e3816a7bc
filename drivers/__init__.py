"""Format drivers, registered by name (imported lazily)."""
