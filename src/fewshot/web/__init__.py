"""The browser explorers behind ``fewshot serve`` (needs ``pip install 'fewshot[web]'``).

models.py     the five shipped networks, loaded once, used read-only under a lock
explorers.py  what each page computes, as plain functions over fewshot (ProtoNet, MAML's inner loop, the
              neural process's mean and sd, in-context prediction and the least-squares / ridge /
              gradient-descent lines)
drawing.py    a drawing from the browser -> a 28x28 Omniglot-like image
app.py        the FastAPI app: pages, validated JSON API
server.py     running the app in a background thread (tests, notebooks)
static/       plain HTML, JS and CSS; no build step
"""
