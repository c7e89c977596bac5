"""The one module-level Parsl app every raw-Parsl job of the benchmark uses.

In a module of its own so that the measurements of the plugin do not import Parsl.
"""

from parsl import bash_app


@bash_app
def run_command(command, inputs=(), stdout=None, stderr=None):
    """Run ``command`` (bash_app runs the string it returns)."""
    return command
