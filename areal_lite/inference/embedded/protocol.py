"""Request models of the SGLang HTTP API endpoints the embedded server serves.

Field names, types and defaults follow SGLang 0.5.x (`sglang/srt/managers/io_struct.py`,
`sglang/srt/sampling/sampling_params.py`); we accept the subset we implement. Models are strict
and forbid unknown fields, so a misspelt or unsupported field is a 400 that names it (SGLang
itself ignores unknown top-level `/generate` keys and rejects unknown sampling keys).
`SGLANG_CONTRACT` maps each model to its SGLang class for the contract test.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)


class _Req(BaseModel):
    model_config = _STRICT


class SamplingParams(_Req):
    """SGLang `SamplingParams` (the supported subset). top_k -1: whole vocabulary; temperature 0: greedy."""

    max_new_tokens: Optional[int] = 128
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = 1.0
    top_k: Optional[int] = -1
    min_new_tokens: Optional[int] = 0
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: Optional[bool] = False
    skip_special_tokens: Optional[bool] = True
    spaces_between_special_tokens: Optional[bool] = True
    no_stop_trim: Optional[bool] = False

    @model_validator(mode="after")
    def _check(self) -> "SamplingParams":
        # SGLang's SamplingParams.verify, with None meaning "default" as in its __post_init__.
        t = 1.0 if self.temperature is None else self.temperature
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a non-negative finite number, got {t}")
        p = 1.0 if self.top_p is None else self.top_p
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        k = -1 if self.top_k is None else self.top_k
        if k < 1 and k != -1:
            raise ValueError(f"top_k must be -1 (disable) or at least 1, got {k}")
        lo = self.min_new_tokens or 0
        if lo < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {lo}")
        if self.max_new_tokens is not None:
            if self.max_new_tokens < 0:
                raise ValueError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}")
            if lo > self.max_new_tokens:
                raise ValueError(f"min_new_tokens must be in [0, max_new_tokens({self.max_new_tokens})], got {lo}")
        return self


class GenerateReqInput(_Req):
    """SGLang `GenerateReqInput` (single request; no batches, no streaming)."""

    rid: Optional[str] = None
    text: Optional[str] = None
    input_ids: Optional[list[int]] = None
    sampling_params: Optional[SamplingParams] = None
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: bool = False
    stream: bool = False

    @model_validator(mode="after")
    def _check(self) -> "GenerateReqInput":
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("input_ids: give exactly one of text or input_ids")
        if self.stream:
            raise ValueError("stream: streaming responses are not supported by the embedded engine")
        if self.logprob_start_len not in (None, -1):
            raise ValueError("logprob_start_len: only -1 (output tokens only) is supported")
        if self.top_logprobs_num not in (None, 0):
            raise ValueError("top_logprobs_num: top log-probs are not supported")
        return self


class UpdateWeightFromDiskReqInput(_Req):
    model_path: str
    load_format: Optional[str] = None
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    flush_cache: bool = True
    torch_empty_cache: bool = False

    @field_validator("load_format")
    @classmethod
    def _format(cls, v):
        if v not in (None, "auto", "safetensors"):
            raise ValueError(f"unsupported load_format {v!r} (safetensors only)")
        return v


class InitWeightsUpdateGroupReqInput(_Req):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = "weight_update_group"
    backend: str = "nccl"

    @field_validator("backend")
    @classmethod
    def _backend(cls, v):
        if v not in ("nccl", "gloo"):
            raise ValueError(f"unsupported backend {v!r}")
        return v


class DestroyWeightsUpdateGroupReqInput(_Req):
    group_name: str = "weight_update_group"


_TENSOR_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "int8", "bool")


class UpdateWeightsFromDistributedReqInput(_Req):
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = "weight_update_group"
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    load_format: Optional[str] = None
    torch_empty_cache: bool = False

    @model_validator(mode="after")
    def _check(self) -> "UpdateWeightsFromDistributedReqInput":
        if not (len(self.names) == len(self.dtypes) == len(self.shapes)):
            raise ValueError("shapes: names, dtypes and shapes must have the same length")
        for d in self.dtypes:
            if d.removeprefix("torch.") not in _TENSOR_DTYPES:
                raise ValueError(f"dtypes: unsupported dtype {d!r}")
        if any(dim < 0 for s in self.shapes for dim in s):
            raise ValueError("shapes: negative dimension")
        if self.load_format not in (None, "flattened_bucket"):
            raise ValueError(f"load_format: unsupported {self.load_format!r} (null or 'flattened_bucket')")
        self.dtypes = [d.removeprefix("torch.") for d in self.dtypes]
        return self


class UpdateWeightVersionReqInput(_Req):
    new_version: str
    abort_all_requests: bool = True


class PauseGenerationReqInput(_Req):
    mode: Literal["abort", "retract", "in_place"] = "abort"


class ContinueGenerationReqInput(_Req):
    torch_empty_cache: bool = True


class AbortReq(_Req):
    rid: Optional[str] = None
    abort_all: bool = False


class BeginWeightUpdateReqInput(_Req):
    selector: Literal["target", "draft", "all"] = "all"


class EndWeightUpdateReqInput(_Req):
    pass


# endpoint -> (our request model, SGLang class name in io_struct.py)
SGLANG_CONTRACT: dict[str, tuple[type[BaseModel], str]] = {
    "/generate": (GenerateReqInput, "GenerateReqInput"),
    "/update_weights_from_disk": (UpdateWeightFromDiskReqInput, "UpdateWeightFromDiskReqInput"),
    "/init_weights_update_group": (InitWeightsUpdateGroupReqInput, "InitWeightsUpdateGroupReqInput"),
    "/destroy_weights_update_group": (DestroyWeightsUpdateGroupReqInput, "DestroyWeightsUpdateGroupReqInput"),
    "/update_weights_from_distributed": (UpdateWeightsFromDistributedReqInput, "UpdateWeightsFromDistributedReqInput"),
    "/update_weight_version": (UpdateWeightVersionReqInput, "UpdateWeightVersionReqInput"),
    "/pause_generation": (PauseGenerationReqInput, "PauseGenerationReqInput"),
    "/continue_generation": (ContinueGenerationReqInput, "ContinueGenerationReqInput"),
    "/abort_request": (AbortReq, "AbortReq"),
    "/begin_weight_update": (BeginWeightUpdateReqInput, "BeginWeightUpdateReqInput"),
    "/end_weight_update": (EndWeightUpdateReqInput, "EndWeightUpdateReqInput"),
}
# Nested models -> (model, SGLang class, the file it lives in under sglang/srt/).
SGLANG_NESTED_CONTRACT: dict[str, tuple[type[BaseModel], str, str]] = {
    "sampling_params": (SamplingParams, "SamplingParams", "sampling/sampling_params.py"),
}
# Keys of our `/generate` response's meta_info; SGLang's api/v1/api_types.py `GenerateMetaInfo` has each.
GENERATE_META_INFO_FIELDS = (
    "id",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "weight_version",
    "weight_versions",
    "e2e_latency",
    "output_token_logprobs",
)


class RequestError(ValueError):
    """A request that fails validation; `field` is the dotted path of the offending field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "field": self.field, "type": "invalid_request_error", "code": 400}}


def parse_request(model: type[BaseModel], body: Union[bytes, str]) -> BaseModel:
    """Validate a JSON body (an empty body counts as {}); raises RequestError naming the field."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not body.strip():
        body = "{}"
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "json_invalid":
            raise RequestError(f"body: malformed JSON: {err.get('msg')}", "body") from None
        if kind == "extra_forbidden":
            raise RequestError(f"unknown field {loc!r}", loc) from None
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        # Model-level validators name their field first ("top_p must be ..."); pydantic gives the
        # location of the model only, so the field is taken from the message.
        head = msg.split(" ", 1)[0].rstrip(":,")
        if head in _FIELD_NAMES and not loc.endswith(head):
            loc = f"{loc}.{head}" if loc else head
        loc = loc or "body"  # the body as a whole (e.g. not a JSON object)
        raise RequestError(msg if msg.startswith(loc) else f"{loc}: {msg}", loc) from None


_FIELD_NAMES = frozenset(
    name for model, *_ in (*SGLANG_CONTRACT.values(), *SGLANG_NESTED_CONTRACT.values()) for name in model.model_fields
)
