import os

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(os.environ.get("CHOTA_MODULE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "chota.py")))
launch_gradio_widget(module)
