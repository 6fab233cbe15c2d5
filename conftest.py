# The lab's pytest plugin is registered through the `pytest11` entry point (see pyproject.toml) and
# lives in lab/pytest_plugin.py. The root conftest only enables pytester, which the plugin's own
# unit tests use (pytest accepts `pytest_plugins` only here, at the root).
pytest_plugins = ["pytester"]
