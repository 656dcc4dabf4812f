"""Classify images with a model served by TF Serving's REST API (standard library only).

Sends the encoded files, base64 in TF Serving's binary form, to the ``serving_bytes`` signature
that ``resnet-keras export`` writes (the server decodes, resizes and crops them in the graph):

    POST http://HOST:8501/v1/models/<model>[/versions/<n>]:predict
    {"signature_name": "serving_bytes", "instances": [{"b64": "<base64 of the JPEG/PNG>"}, ...]}

and prints the top-k labels and probabilities of each image from the response's ``predictions``.

    python scripts/rest_client.py --model resnet20 cat.jpg dog.png
    python scripts/rest_client.py --url http://localhost:8501 --model resnet20 --version 3 --json cat.jpg
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request


def build_request(images: list[bytes], signature: str = "serving_bytes") -> dict:
    """The JSON body of a row-format (``instances``) predict request for encoded images."""
    return {
        "signature_name": signature,
        "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in images],
    }


def predict(
    url: str,
    model: str,
    images: list[bytes],
    version: int | None = None,
    signature: str = "serving_bytes",
    timeout: float = 30.0,
) -> list[dict]:
    """POSTs the images; returns the ``predictions`` list (one dict of outputs per image)."""
    endpoint = f"{url.rstrip('/')}/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(build_request(images, signature)).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="JPEG or PNG files")
    parser.add_argument("--url", default="http://localhost:8501", help="TF Serving REST address")
    parser.add_argument("--model", required=True, help="model name (the served base path's name)")
    parser.add_argument("--version", type=int, help="a specific version (default: the latest served)")
    parser.add_argument("--signature", default="serving_bytes", help="signature taking image bytes")
    parser.add_argument("--json", action="store_true", help="print the raw predictions as JSON")
    args = parser.parse_args(argv)
    try:
        images = [open(path, "rb").read() for path in args.images]
    except OSError as error:
        print(f"Error: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        predictions = predict(args.url, args.model, images, args.version, args.signature)
    except urllib.error.HTTPError as error:  # TF Serving explains in {"error": "..."}
        body = error.read().decode(errors="replace")
        try:
            body = json.loads(body).get("error", body)
        except ValueError:
            pass
        print(f"Error: {error.code} from {error.url}: {body}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"Error: cannot reach {args.url}: {getattr(error, 'reason', error)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(predictions, indent=2))
        return 0
    for path, outputs in zip(args.images, predictions):
        print(path)
        for rank, (label, probability) in enumerate(zip(outputs["top_k_labels"], outputs["top_k_probabilities"]), 1):
            print(f"  {rank}. {label}  {probability:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
