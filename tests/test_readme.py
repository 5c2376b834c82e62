"""The README's Python API example runs as written, with numpy data as it shows."""

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class MyNet(torch.nn.Module):
    """What a user brings: any module; small so 100 rounds take a second or two."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_readme_python_api_example_runs_with_numpy_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)  # numpy's default integer labels, as a user has them
    images = (rng.normal(size=(96, 1, 4, 4)) + labels[:, None, None, None]).astype(np.float32)
    namespace = {"MyNet": MyNet, "my_images_float32": images, "my_labels_int64": labels}
    torch.set_num_threads(1)
    exec(compile(_python_api_example(), str(README), "exec"), namespace)
    data, server = namespace["data"], namespace["server"]
    assert isinstance(data.x, torch.Tensor) and data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert len(data) == 96 and namespace["r"] == 99
    assert all(torch.isfinite(p).all() for p in server.model.parameters())
