"""Provider-native webhook schemes, one module each (base.py: what they
share; registry.py: the declared sources built from the sources file)."""
