"""User-facing errors.

Every error a user can cause (a bad model name, a corrupt file, an invalid
scenario, inputs of the wrong shape) is a :class:`CoscaleError` with a stable
``code``, a one-paragraph ``message`` naming the problem, and a ``fix``. The CLI
prints it without a traceback and exits with status 2; the HTTP API turns it
into ``{"error": code, "message": text}``.
"""

from __future__ import annotations


class CoscaleError(Exception):
    """An error caused by the user's input, with a stable code and a suggested fix."""

    code: str = "error"
    http_status: int = 400

    def __init__(self, message: str, *, fix: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        if code is not None:
            self.code = code

    def render(self) -> str:
        """The one-paragraph text shown to the user."""
        return f"{self.message} {self.fix}".strip()


class UnknownModelError(CoscaleError):
    code = "unknown_model"
    http_status = 404


class ModelFileError(CoscaleError):
    code = "bad_model_file"


class InvalidInputError(CoscaleError):
    code = "invalid_input"
    http_status = 422


class ScenarioError(CoscaleError):
    code = "invalid_scenario"


class ProfileError(CoscaleError):
    code = "bad_profile"


class CatalogError(CoscaleError):
    code = "bad_catalog"
