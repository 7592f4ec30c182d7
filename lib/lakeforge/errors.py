"""Errors a user can cause and fix; the CLI prints them as one line, without a traceback."""


class LakeforgeError(Exception):
    """A problem the user can fix: the message names the thing and the fix."""


class ConfigError(LakeforgeError):
    """A configuration file, key or value is wrong."""


class EnvironmentProblem(LakeforgeError):
    """The machine lacks something lakeforge needs (Java, cached jars, ...)."""


class DataError(LakeforgeError):
    """Input data or a table is missing or breaks its contract."""


class DeletionRefused(LakeforgeError):
    """lakeforge was asked to delete a folder it did not create for this project."""
