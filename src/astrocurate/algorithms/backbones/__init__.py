"""Feature backbones: a registry of named models and the code that builds each family."""
