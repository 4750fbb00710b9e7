"""Demo stand-ins for the seed system's components, run as ``python -m agent.demo.<name>``.

``default.yaml`` beside them is the embedded default config (``agent.config.loader.DEFAULT_CONFIG``).
"""
