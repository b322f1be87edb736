"""Job file texts shared by the inbox and power tests."""

from __future__ import annotations

# A 9 KB sweep whose placeholder values hold placeholders, three levels deep: filled in one name
# after the other it asked for 1000 x 1000 x 1000 characters (and 3 GB on the way).
NESTED_MATRIX = {
    "prompt": "{a}" * 1000,
    "matrix": {"a": ["{b}" * 1000], "b": ["{c}" * 1000], "c": ["x"]},
}


def nested_matrix_yaml() -> str:
    matrix = NESTED_MATRIX["matrix"]
    assert isinstance(matrix, dict)
    lines = [f'prompt: "{NESTED_MATRIX["prompt"]}"', "matrix:"]
    lines += [f'  {name}: ["{values[0]}"]' for name, values in matrix.items()]
    return "\n".join(lines) + "\n"
