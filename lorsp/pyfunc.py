"""The MLflow pyfunc model of an exported lorsp prompt (models-from-code).

MLflow loads this file by path (`python_model=`) in whatever process serves the model, so it
imports only MLflow and numpy at the top and lorsp when the model is loaded; `lorsp.export`
registers it with the exported folder as the `export` artifact and the lorsp package as code.
Input: float32 images N x 3 x L x L in [0, 1]; output: class probabilities N x C.
"""

import warnings

import mlflow
import numpy as np

with warnings.catch_warnings():
    # The input is a tensor signature (set when logging), not a type-hinted one.
    warnings.simplefilter("ignore", UserWarning)

    class LorspPromptModel(mlflow.pyfunc.PythonModel):
        """Loads the export with `lorsp.load` and answers with softmax probabilities."""

        def load_context(self, context):  # noqa: ANN001, ANN201  (MLflow's signature)
            import lorsp

            self.model = lorsp.load(context.artifacts["export"])

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            import torch

            x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            with torch.no_grad():
                return torch.softmax(self.model(x).float(), dim=1).numpy()

    mlflow.models.set_model(LorspPromptModel())
