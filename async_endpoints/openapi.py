"""An OpenAPI 3.1 description of the registered endpoints and the job endpoints."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from async_endpoints.manager import HandlerSpec

_RULE_VAR = re.compile(r"<(?:(?P<conv>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_TYPES = {"int": "integer", "float": "number", "uuid": "string"}
_PY_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_ERRORS = {
    "400": "The body is not valid JSON",
    "413": "The body is too large",
    "415": "The body is not JSON",
    "422": "The body does not fit the request model, or an idempotency key was reused",
    "429": "The queue is full; retry after Retry-After seconds",
    "503": "The job store is unreachable; retry after Retry-After seconds",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _job_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Location": {"schema": {"type": "string"}, "description": "The job's URL"},
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "Seconds before polling again (while pending)",
            },
        },
        "content": {"application/json": {"schema": _ref("Job")}},
    }


def _model_schema(model: type[Any]) -> dict[str, Any]:
    if hasattr(model, "model_json_schema"):
        schema: dict[str, Any] = model.model_json_schema()
        return schema
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(model):
        name = field.type if isinstance(field.type, str) else field.type.__name__
        kind = _PY_TYPES.get(str(name))
        properties[field.name] = {"type": kind} if kind else {}
        if (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            required.append(field.name)
    return {
        "title": model.__name__,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for match in _RULE_VAR.finditer(rule):
        kind = _CONVERTER_TYPES.get(match["conv"] or "", "string")
        params.append(
            {
                "name": match["name"],
                "in": "path",
                "required": True,
                "schema": {"type": kind},
            }
        )
    return _RULE_VAR.sub(lambda m: "{" + m["name"] + "}", rule), params


def _submit_operation(spec: HandlerSpec) -> dict[str, Any]:
    doc = (spec.func.__doc__ or "").strip().splitlines()
    _, params = _path(spec.rule)
    params += [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "Repeats with the same key answer with the same job",
        },
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "example": "wait=10"},
            "description": "wait=N: answer 200 with the job if it ends within N s",
        },
        {
            "name": "Callback-Url",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "format": "uri"},
            "description": "Receives one signed POST (Standard Webhooks) when the "
            "job ends; its host must be in ASYNC_ENDPOINTS_CALLBACK_HOSTS",
        },
    ]
    operation: dict[str, Any] = {
        "operationId": spec.name,
        "summary": doc[0] if doc else f"Submit a {spec.name} job",
        "parameters": params,
        "responses": {
            "202": _job_response(
                "The job was queued (or found by its idempotency key)"
            ),
            "200": _job_response("The job ended within the Prefer: wait time"),
            **{code: _problem(text) for code, text in _ERRORS.items()},
        },
    }
    body_schema = (
        _model_schema(spec.request_model) if spec.request_model is not None else {}
    )
    operation["requestBody"] = {
        "required": spec.request_model is not None,
        "content": {"application/json": {"schema": body_schema}},
    }
    return operation


def build_openapi(
    handlers: Iterable[HandlerSpec], *, jobs_url: str, title: str = "Jobs API"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``handlers`` and the job status endpoints."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in handlers:
        if spec.schedule is not None:
            continue  # a periodic job has no route
        path, _ = _path(spec.rule)
        paths.setdefault(path, {})[spec.method.lower()] = _submit_operation(spec)
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    not_found = _problem("No such job (or not yours)")
    unavailable = _problem(_ERRORS["503"])
    paths[f"{jobs_url}/{{job_id}}"] = {
        "get": {
            "operationId": "getJob",
            "summary": "The job's status and, once it has ended, its result or error",
            "parameters": [
                job_id,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "Answer as soon as the job has ended, or after N s",
                },
            ],
            "responses": {
                "200": _job_response("The job"),
                "400": _problem("wait is not a whole number"),
                "404": not_found,
                "503": unavailable,
            },
        },
        "delete": {
            "operationId": "cancelJob",
            "summary": "Cancel a waiting job, or ask a running one to stop",
            "parameters": [job_id],
            "responses": {
                "200": _job_response("Canceled, or cancellation requested"),
                "404": not_found,
                "409": _problem("The job already ended"),
                "503": unavailable,
            },
        },
    }
    paths[f"{jobs_url}/{{job_id}}/events"] = {
        "get": {
            "operationId": "followJob",
            "summary": "The job's changes as Server-Sent Events (event: job, "
            "id: its version, data: the job), until it ends",
            "parameters": [
                job_id,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer"},
                    "description": "Resume: the current state is sent only if newer",
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "404": not_found,
                "503": unavailable,
            },
        }
    }
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Job": {
                    "type": "object",
                    "required": [
                        "id",
                        "name",
                        "status",
                        "retryCount",
                        "maxRetries",
                        "createdAt",
                        "startedAt",
                        "completedAt",
                        "lastUpdatedAt",
                        "result",
                        "error",
                        "progress",
                        "version",
                        "callback",
                    ],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "name": {"type": "string"},
                        "status": {
                            "type": "string",
                            "enum": [
                                "Queued",
                                "Scheduled",
                                "InProgress",
                                "Completed",
                                "Failed",
                                "Canceled",
                            ],
                        },
                        "retryCount": {"type": "integer"},
                        "maxRetries": {"type": "integer"},
                        "createdAt": timestamp,
                        "startedAt": timestamp,
                        "completedAt": timestamp,
                        "lastUpdatedAt": timestamp,
                        "nextAttemptAt": timestamp,
                        "result": {},
                        "error": {
                            "type": ["object", "null"],
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                                "stackTrace": {"type": ["string", "null"]},
                            },
                        },
                        "progress": {
                            "type": ["object", "null"],
                            "properties": {
                                "fraction": {
                                    "type": "number",
                                    "minimum": 0,
                                    "maximum": 1,
                                },
                                "message": {"type": ["string", "null"]},
                            },
                        },
                        "cancelRequested": {"type": "boolean"},
                        "version": {"type": "integer", "minimum": 1},
                        "callback": {
                            "type": ["object", "null"],
                            "properties": {
                                "url": {"type": "string"},
                                "status": {
                                    "type": "string",
                                    "enum": ["Pending", "Delivered", "Failed"],
                                },
                                "attempts": {"type": "integer"},
                                "lastError": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "errors": {"type": "array", "items": {"type": "object"}},
                    },
                },
            }
        },
    }
