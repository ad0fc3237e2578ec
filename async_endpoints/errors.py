"""The exception tree of async-endpoints.

Domain errors know nothing of HTTP; ``views.py`` maps them to status codes in one
table. The tree::

    AsyncEndpointsError(Exception)
    ├── ConfigurationError(RuntimeError)      bad config, init_app twice, no init_app
    ├── JobNotFoundError(LookupError)         unknown or malformed job id      -> 404
    ├── JobFinishedError                      cancel of an ended job           -> 409
    ├── QueueFullError                        .retry_after seconds             -> 429
    ├── InvalidRequestError(ValueError)       body not JSON                    -> 400
    │   ├── InvalidParameterError             malformed query parameter        -> 400
    │   ├── UnsupportedMediaTypeError         body not in a JSON type          -> 415
    │   ├── PayloadTooLargeError              body over MAX_REQUEST_BYTES      -> 413
    │   ├── ValidationError                   body does not fit the model      -> 422
    │   └── IdempotencyConflictError          same key, another request        -> 422
    ├── ResultError(TypeError)                result not storable as JSON      -> Failed
    ├── JobTimeoutError                       run past JOB_TIMEOUT_SECONDS     -> retry
    └── StoreError
        └── StoreUnavailableError             store unreachable                -> 503

Apart from the tree, :class:`HandBack` is not an error but a request a handler
makes: raised in a handler, it hands the job back to the queue.
"""

from __future__ import annotations

from typing import Any


class AsyncEndpointsError(Exception):
    """The root of every error this library raises."""


class ConfigurationError(AsyncEndpointsError, RuntimeError):
    """The extension is misconfigured or misused; the message says how to fix it."""


class JobNotFoundError(AsyncEndpointsError, LookupError):
    """No job has this id (or the id is malformed, or the job has expired)."""


class JobFinishedError(AsyncEndpointsError):
    """The job has already ended, so it cannot be canceled (HTTP meaning: 409)."""

    status_code = 409


class QueueFullError(AsyncEndpointsError):
    """The queue holds ``ASYNC_ENDPOINTS_MAX_QUEUE_SIZE`` jobs; try again later.

    :param retry_after: seconds the caller should wait before trying again.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OwnerQuotaError(QueueFullError):
    """The submitting owner already has ``ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER``
    jobs waiting (Queued + Scheduled); other owners are not affected."""


class InvalidRequestError(AsyncEndpointsError, ValueError):
    """The submitted request cannot become a job (malformed JSON body)."""


class InvalidParameterError(InvalidRequestError):
    """A query parameter has a value the endpoint cannot use (e.g. ``?wait=soon``)."""


class UnsupportedMediaTypeError(InvalidRequestError):
    """The request body is in a content type the endpoint does not take."""


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than ``ASYNC_ENDPOINTS_MAX_REQUEST_BYTES``."""


class ValidationError(InvalidRequestError):
    """The body does not fit the handler's ``request_model``.

    :param errors: one entry per problem, each with ``loc``, ``msg`` and ``type``.
    """

    def __init__(self, message: str, *, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class IdempotencyConflictError(InvalidRequestError):
    """An idempotency key was reused with a different request body."""


class CallbackRefusedError(InvalidRequestError):
    """A ``Callback-Url`` that this app does not call: callbacks are off, the
    host is not allowed, or it resolves to a private address."""


class ResultError(AsyncEndpointsError, TypeError):
    """A handler returned a value that cannot be stored as the job's JSON result."""


class JobTimeoutError(AsyncEndpointsError):
    """A run took longer than ``ASYNC_ENDPOINTS_JOB_TIMEOUT_SECONDS``."""


class StoreError(AsyncEndpointsError):
    """The job store failed."""


class StoreUnavailableError(StoreError):
    """The job store cannot be reached (for example, Redis is down)."""


class HandBack(Exception):  # noqa: N818 - a request, not an error: like StopIteration
    """Raise it in a handler to hand the job back to the queue on purpose.

    The run ends without a result and without counting an attempt; the job is
    Queued again and due at once, for this or another process to run. A job
    handed back more than ``ASYNC_ENDPOINTS_MAX_HANDBACKS`` times in a row counts
    that as a failed attempt, so a job that is always handed back still ends.
    A handler that sees ``ctx.cancelled`` set for ``"shutdown"`` need not raise
    it: its job is handed back already.
    """
