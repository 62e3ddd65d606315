"""A plugin module that fails on import (registry tests: it must read as 'unavailable', never a traceback)."""

import a_module_that_does_not_exist  # noqa: F401
