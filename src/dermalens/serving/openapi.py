"""The API described as an OpenAPI 3 document (GET /openapi.json), for clients and code generators.

Written by hand next to the routes rather than generated from them: a
test (tests/test_serving_capacity.py) checks that its paths and methods are
exactly the app's, so the two cannot drift apart unnoticed.
"""
from __future__ import annotations

from .. import __version__
from ..classes import RESEARCH_DISCLAIMER

OPENAPI_VERSION = "3.0.3"
EXPLAIN_FORMATS = ("png", "json")


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema_name: str, description: str, headers: dict | None = None) -> dict:
    answer = {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}
    if headers:
        answer["headers"] = headers
    return answer


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}


def probabilities_schema(classes: list[str]) -> dict:
    return {"type": "object", "description": "class code -> probability (they sum to 1)",
            "properties": {code: {"type": "number", "minimum": 0, "maximum": 1} for code in classes},
            "required": list(classes)}


def class_code_schema(classes: list[str]) -> dict:
    """The served model's class codes (saved with the model: HAM10000's 7, or the data's own)."""
    return {"type": "string", "enum": list(classes)}


def upload_errors(limit_mb: float, busy: str) -> dict:
    """The error answers every upload route shares, by status."""
    return {
        "400": _json("Error", "bad request: no image field, an unreadable or truncated image, an unknown name, "
                              "an image too thin to explain (over 10:1)"),
        "403": _json("Error", "a server on a loopback address: a Host that is not a loopback name, or a foreign Origin"),
        "413": _json("Error", f"upload over {limit_mb:g} MB, or an image over the pixel limit"),
        "415": _json("Error", "the file is not an image this server reads (JPEG, PNG, TIFF, BMP, WebP)"),
        "500": _json("Error", "unexpected failure; the body carries only a request id, the server log the rest"),
        "503": _json("Error", busy, RETRY_AFTER),
    }


def explain_errors(limit_mb: float, timeout: float) -> dict:
    return {**upload_errors(limit_mb, "every explanation slot and queue place is taken (try again after "
                                      "Retry-After seconds), or explanations are not available on this server"),
            "504": _json("Error", f"the explanation was not ready within the time limit ({timeout:g} s)",
                         RETRY_AFTER)}


def upload_form(methods: tuple[str, ...], classes: list[str], *, method: bool = False, output: bool = False) -> dict:
    properties = {"image": {"type": "string", "format": "binary",
                            "description": "the image file (JPEG, PNG, TIFF, BMP or WebP)"}}
    if method:
        properties["method"] = {"type": "string", "enum": list(methods), "default": "gradcam",
                                "description": "explanation method"}
        properties["class"] = {**class_code_schema(classes),
                               "description": "class to explain (any case; default: the predicted class, the decision "
                                              "rule's)"}
    if output:
        properties["format"] = {"type": "string", "enum": list(EXPLAIN_FORMATS), "default": "png",
                                "description": "png: the overlay image; json: the heatmap and the overlay"}
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": ["image"]}}}}


def openapi_document(info: dict, methods: tuple[str, ...], limit_mb: float, explain_timeout: float) -> dict:
    """The document for one server: its model's name, its explanation methods, its limits."""
    png = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
    classes = [entry["code"] for entry in info["classes"]]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "dermalens", "version": __version__,
                 "description": f"Skin-lesion classifier {info['name']}: predictions and explanations. "
                                f"{RESEARCH_DISCLAIMER}"},
        "paths": {
            "/health": {"get": {"summary": "the server is up", "operationId": "health",
                                "responses": {"200": _json("Health", "the server answers")}}},
            "/api/model": {"get": {"summary": "the model, its classes, input, metrics and the server's limits",
                                   "operationId": "model",
                                   "responses": {"200": _json("ModelInfo", "the model served")}}},
            "/api/predict": {"post": {
                "summary": "class probabilities for one image", "operationId": "predict",
                "requestBody": upload_form(methods, classes),
                "responses": {"200": _json("Prediction", "the probabilities of every class"),
                              **upload_errors(limit_mb, "every prediction slot and queue place is taken, or none "
                                                        "became free in time; try again after Retry-After seconds")}}},
            "/api/explain": {"post": {
                "summary": "where in the image the evidence for a class lies", "operationId": "explain",
                "requestBody": upload_form(methods, classes, method=True, output=True),
                "responses": {"200": {"description": "format png: the heatmap over the image with a caption; "
                                                     "format json: an Explanation",
                                      "headers": {"X-Explanation-Method": {"schema": {"type": "string"}},
                                                  "X-Target-Class": {"schema": class_code_schema(classes)},
                                                  "X-Disclaimer": {"schema": {"type": "string"}}},
                                      "content": {**png, "application/json": {"schema": _ref("Explanation")}}},
                              **explain_errors(limit_mb, explain_timeout)}}},
            "/api/report": {"post": {
                "summary": "one PNG with the image, the probabilities, the heatmap and the research note",
                "operationId": "report",
                "requestBody": upload_form(methods, classes, method=True),
                "responses": {"200": {"description": "the report (a download: Content-Disposition attachment)",
                                      "content": png},
                              **explain_errors(limit_mb, explain_timeout)}}},
            "/openapi.json": {"get": {"summary": "this document", "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3 document",
                                                            "content": {"application/json": {
                                                                "schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": schemas(classes)},
    }


def schemas(classes: list[str]) -> dict:
    """The response bodies, for one model's class set."""
    return {
        "Error": {"type": "object", "required": ["error", "status"], "properties": {
            "error": {"type": "string", "description": "what was wrong, in words"},
            "status": {"type": "integer"},
            "request_id": {"type": "string", "nullable": True, "description": "also in the X-Request-ID header"}}},
        "Health": {"type": "object", "required": ["status"], "properties": {
            "status": {"type": "string", "enum": ["ok"]}, "model": {"type": "string"},
            "version": {"type": "string", "nullable": True}}},
        "Prediction": {"type": "object", "required": ["predicted_class", "top_class", "probabilities", "disclaimer"],
                       "properties": {
            "image": {"type": "string", "description": "the upload's file name (a label only)"},
            "image_size": {"type": "array", "items": {"type": "integer"}, "description": "[width, height] in pixels"},
            "predicted_class": {**class_code_schema(classes), "description": "the class the model's decision rule "
                                "picks (fitted class biases); explanations target it by default"},
            "predicted_class_name": {"type": "string"},
            "decision_rule": {"type": "string", "description": "'raw argmax', or the rule and what it was fitted on"},
            "melanoma_flag": {"type": "boolean", "nullable": True, "description": "P(mel) at or above the model's "
                              "melanoma operating point; null when the model has none"},
            "caution": {"type": "string", "nullable": True, "description": "why the answer is unreliable (an "
                        "image the model sees enlarged more than 3x); null when nothing is known against it"},
            "top_class": {**class_code_schema(classes), "description": "the most probable class"},
            "top_class_name": {"type": "string"},
            "probabilities": probabilities_schema(classes),
            "top_k": {"type": "array", "items": {"type": "object", "properties": {
                "class": class_code_schema(classes), "name": {"type": "string"}, "probability": {"type": "number"}}}},
            "model": {"type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "string", "nullable": True},
                "checkpoint": {"type": "string", "nullable": True}, "inference_engine": {"type": "string"}}},
            "disclaimer": {"type": "string"}}},
        "Explanation": {"type": "object", "required": ["method", "target_class", "heatmap", "disclaimer"], "properties": {
            "image": {"type": "string"}, "method": {"type": "string"},
            "target_class": class_code_schema(classes), "target_class_name": {"type": "string"},
            "probabilities": probabilities_schema(classes),
            "image_size": {"type": "array", "items": {"type": "integer"}, "description": "[width, height] in pixels"},
            "caution": {"type": "string", "nullable": True, "description": "as in a prediction"},
            "heatmap_shape": {"type": "array", "items": {"type": "integer"}, "description": "[height, width]"},
            "heatmap": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                        "description": "rows of values in [0, 1] over the whole image, at the model's resolution "
                                       "(longest side: the input size); resize to image_size to overlay it"},
            "overlay_png_base64": {"type": "string", "format": "byte"},
            "disclaimer": {"type": "string"}}},
        "ModelInfo": {"type": "object", "required": ["name", "classes", "disclaimer"], "properties": {
            "name": {"type": "string"}, "backbone": {"type": "string", "nullable": True}, "cbam": {"type": "boolean"},
            "version": {"type": "string", "nullable": True}, "server_version": {"type": "string"},
            "checkpoint": {"type": "string", "nullable": True},
            "model_file": {"type": "string", "nullable": True, "description": "the file served (.ckpt or .onnx)"},
            "epoch": {"type": "integer", "nullable": True}, "weights_source": {"type": "string", "nullable": True},
            "input_size": {"type": "integer"}, "preprocessing": {"type": "object"},
            "temperature": {"type": "number"}, "tta": {"type": "boolean"},
            "val_metrics": {"type": "object", "additionalProperties": {"type": "number"}},
            "classes": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"}, "code": class_code_schema(classes), "name": {"type": "string"}}}},
            "inference_engine": {"type": "string", "description": "what answers predictions: pytorch, onnxruntime..."},
            "explain_methods": {"type": "array", "items": {"type": "string"}},
            "explain_available": {"type": "boolean"},
            "max_upload_mb": {"type": "number"}, "max_image_pixels": {"type": "integer"},
            "limits": {"type": "object", "description": "slots, queue and time limits (dermalens serve options)",
                       "properties": {"predict_slots": {"type": "integer"}, "explain_slots": {"type": "integer"},
                                      "predict_queue": {"type": "integer"}, "explain_queue": {"type": "integer"},
                                      "queue_timeout": {"type": "number"},
                                      "explain_timeout": {"type": "number"},
                                      "decode_slots": {"type": "integer"}}},
            "disclaimer": {"type": "string"}}},
    }
