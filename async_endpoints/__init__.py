"""async-endpoints: asynchronous request-reply endpoints for Flask.

A client POSTs and gets ``202 Accepted`` with a job at once; a background worker
runs the handler with retries and backoff; the client polls the job's status.
"""

from async_endpoints.context import AsyncContext, CancelEvent
from async_endpoints.errors import (
    AsyncEndpointsError,
    CallbackRefusedError,
    ConfigurationError,
    HandBack,
    IdempotencyConflictError,
    InvalidParameterError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFoundError,
    JobTimeoutError,
    OwnerQuotaError,
    PayloadTooLargeError,
    QueueFullError,
    ResultError,
    StoreError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from async_endpoints.extension import AsyncEndpoints
from async_endpoints.jobs import (
    Callback,
    CallbackStatus,
    ErrorInfo,
    Job,
    JobStatus,
    Progress,
)
from async_endpoints.stores import JobStore, MemoryStore

__all__ = [
    "AsyncContext",
    "AsyncEndpoints",
    "AsyncEndpointsError",
    "Callback",
    "CallbackRefusedError",
    "CallbackStatus",
    "CancelEvent",
    "ConfigurationError",
    "ErrorInfo",
    "HandBack",
    "IdempotencyConflictError",
    "InvalidParameterError",
    "InvalidRequestError",
    "Job",
    "JobFinishedError",
    "JobNotFoundError",
    "JobStatus",
    "JobStore",
    "JobTimeoutError",
    "MemoryStore",
    "OwnerQuotaError",
    "PayloadTooLargeError",
    "Progress",
    "QueueFullError",
    "ResultError",
    "StoreError",
    "StoreUnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
]
