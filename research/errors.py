"""The errors bad input raises: the CLIs print each as one line (research/cli.py).

They sit below every other research module, research.config included, so that a module any
config imports (research.taskdefs) can raise them; research.config re-exports them, and that is
the name the rest of the code uses."""


class UserError(Exception):
  """Bad input from the user (config, data, checkpoint, flags): the CLIs print it as one line."""


class DataError(UserError, ValueError):
  """Data, a corpus or a tokenizer that cannot be used; the message names the file and the fix."""


class ConfigError(UserError, ValueError):
  """A config that cannot run; the message names the problem and the fix."""
