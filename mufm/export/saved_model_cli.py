"""`saved_model_cli` with tensorflow-text's ops registered: python -m
mufm.export.saved_model_cli run --dir DIR/NAME/1 --tag_set serve --signature_def
serving_default --input_exprs 'text=[b"a calm piano piece"];seconds=[10.0];seed=[0]'

The exported signatures tokenise captions in the graph with tensorflow-text ops
(mufm/export/text.py). TF Serving's model server links those ops in; TensorFlow's own
`saved_model_cli` does not, so its `run` fails with "Op type not registered
'FastBertNormalize'" (`show` works either way). This runs the same tool after importing
tensorflow_text, which registers them."""
import sys

import tensorflow_text  # noqa: F401  (registers the ops)
from tensorflow.python.tools.saved_model_cli import main

if __name__ == "__main__":
    sys.argv[0] = "saved_model_cli"
    sys.exit(main())
