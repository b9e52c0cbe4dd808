"""The OpenAPI 3.1 document of API v1, generated from the models that validate requests.

``python -m sandboxd.service.openapi > docs/openapi.json`` writes the copy kept in the repo;
a test checks that the two never drift.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from sandboxd.service import schemas

REF = "#/components/schemas/{model}"
MODELS = [schemas.RunRequest, schemas.RunResultModel, schemas.RunStatusModel, schemas.ErrorModel,
          schemas.PoliciesModel, schemas.HealthModel]


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model_or_schema: Any, description: str) -> dict[str, Any]:
    schema = _ref(model_or_schema) if isinstance(model_or_schema, type) else model_or_schema
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "malformed JSON", 401: "missing or invalid token", 403: "policy not allowed for this token",
            404: "no such run", 413: "request body too large", 415: "not application/json",
            422: "invalid request; error.field names the field",
            429: "rate limited or queue full; see Retry-After", 503: "shutting down; see Retry-After",
            504: "the call took longer than request_timeout_s"}
    responses = {str(code): _json(schemas.ErrorModel, text[code]) for code in codes}
    for code in ("429", "503"):
        if code in responses:
            responses[code]["headers"] = {"Retry-After": {"required": True, "description": "seconds",
                                                         "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return responses


ACCEPTED = {"type": "object", "required": ["id", "status"],
            "properties": {"id": {"type": "string"},
                           "status": {"enum": ["queued", "running", "finished", "failed", "cancelled"]}}}
# Open API 3.1 without itemSchema: the schema of an event stream describes each event.
SSE_EVENT = {"type": "object", "required": ["event", "data"],
             "properties": {"event": {"enum": ["queued", "started", "stdout", "stderr", "finished"]},
                            "data": {"type": "string", "contentMediaType": "application/json",
                                     "description": "JSON: {id} for queued/started, {data, data_base64} for "
                                                    "output, {id, status, reason, result} for finished"}}}
RUN_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
SECURED = [{"bearer": []}]


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    auth_errors = (401, 429)
    return {
        "openapi": "3.1.0",
        "info": {"title": "sandboxd", "version": "1",
                 "description": "Run untrusted programs in hardened sandboxes."},
        "components": {"schemas": definitions.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/runs": {"post": {
                "summary": "Run a program", "operationId": "createRun", "security": SECURED,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(schemas.RunRequest)}}},
                "responses": {"200": _json({"anyOf": [_ref(schemas.RunResultModel), _ref(schemas.RunStatusModel)]},
                                           "wait=true: the result of the finished run, or the run's "
                                           "status and reason when it failed or was cancelled"),
                              "202": _json(ACCEPTED, "queued (wait=false), still running after the longest "
                                                     "wait, or left queued by a restart"),
                              **_errors(400, 403, 413, 415, 422, *auth_errors, 503)}}},
            "/v1/runs/{id}": {
                "get": {"summary": "A run's state and result", "operationId": "getRun", "security": SECURED,
                        "parameters": [RUN_ID],
                        "responses": {"200": _json(schemas.RunStatusModel, "the run"),
                                      **_errors(404, *auth_errors, 504)}},
                "delete": {"summary": "Cancel a run (kills its job)", "operationId": "cancelRun",
                           "security": SECURED, "parameters": [RUN_ID],
                           "responses": {"200": _json(ACCEPTED, "the run's final state"),
                                         "202": _json(ACCEPTED, "cancellation under way"),
                                         **_errors(404, *auth_errors, 504)}}},
            "/v1/runs/{id}/events": {"get": {
                "summary": "Server-Sent Events: queued, started, stdout, stderr, finished",
                "operationId": "runEvents", "security": SECURED, "parameters": [RUN_ID],
                "responses": {"200": {"description": "an event stream",
                                      "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                              **_errors(404, *auth_errors)}}},
            "/v1/policies": {"get": {
                "summary": "The policies this token may use", "operationId": "listPolicies", "security": SECURED,
                "responses": {"200": _json(schemas.PoliciesModel, "policies"), **_errors(*auth_errors, 504)}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                         "responses": {"200": {"description": "OpenAPI 3.1",
                                                               "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz",
                                 "responses": {"200": _json(schemas.HealthModel, "alive")}}},
            "/readyz": {"get": {"summary": "Readiness (spawner answers, not shutting down)", "operationId": "readyz",
                                "responses": {"200": _json(schemas.HealthModel, "ready"),
                                              "503": _json(schemas.HealthModel, "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "text format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
