"""Request validation: SGLang's rules, and every error names its field."""

from __future__ import annotations

import pytest

from areal_lite.inference.embedded import protocol as P


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"input_ids": [1], "extra": 1}', "extra"),
        ('{"input_ids": [1], "sampling_params": {"top_pp": 1}}', "sampling_params.top_pp"),
        ('{"input_ids": [1.5]}', "input_ids.0"),
        ('{"input_ids": [1], "sampling_params": {"ignore_eos": 1}}', "sampling_params.ignore_eos"),
        ('{"input_ids": [1], "sampling_params": {"min_new_tokens": 5, "max_new_tokens": 2}}', "sampling_params.min_new_tokens"),
        ('{"input_ids": [1], "sampling_params": {"max_new_tokens": -1}}', "sampling_params.max_new_tokens"),
        ('{"input_ids": [1], "top_logprobs_num": 3}', "top_logprobs_num"),
        ('{"input_ids": [1], "logprob_start_len": 0}', "logprob_start_len"),
        ("not json", "body"),
        ("", "input_ids"),
    ],
)
def test_generate_errors_name_the_field(body, field):
    with pytest.raises(P.RequestError) as err:
        P.parse_request(P.GenerateReqInput, body)
    assert err.value.field == field
    assert err.value.to_json()["error"]["field"] == field


def test_sglang_defaults_and_none_meaning_default():
    req = P.parse_request(P.GenerateReqInput, b'{"input_ids": [3, 4], "sampling_params": {"temperature": null}}')
    sp = req.sampling_params
    assert (sp.max_new_tokens, sp.top_p, sp.top_k, sp.min_new_tokens, sp.ignore_eos) == (128, 1.0, -1, 0, False)
    assert sp.temperature is None  # None means SGLang's default, 1.0
    assert P.parse_request(P.PauseGenerationReqInput, b"").mode == "abort"
    dist = P.parse_request(P.UpdateWeightsFromDistributedReqInput,
                           b'{"names": ["w"], "dtypes": ["torch.bfloat16"], "shapes": [[2, 3]]}')
    assert dist.dtypes == ["bfloat16"] and dist.group_name == "weight_update_group"
