"""`container commit CONTAINER IMAGE`: save what is in a container's own filesystem (what was installed in it)
as an image of the caller's, USER/IMAGE. Mounted directories, the workspace among them, are not part of it."""

from __future__ import annotations

import argparse
import os

from ds01.cli.container.client import ProxyClient
from ds01.cli.container.image import own_image, owner, short_id
from ds01.cli.context import Context
from ds01.errors import Ds01Error
from ds01.names import check_name, engine_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", metavar="CONTAINER", help="your container, as you named it at `container create`")
    parser.add_argument("image", metavar="IMAGE", help="the image to save it as: NAME, or NAME:TAG (saved as "
                                                       "USER/NAME:latest unless a tag is given)")


def run(args: argparse.Namespace, context: Context) -> int:
    name = check_name(args.container)
    image = own_image(args.image, owner())
    with ProxyClient.of(context.paths) as proxy:
        print(f"saving {name} as {image}... ", end="", flush=True)
        try:
            made = proxy.commit(engine_name(name, os.getuid()), image.repository, image.tag)
        except Ds01Error:
            print("failed", flush=True)
            raise
        print("saved")
    print(f"{image} is image {short_id(made)}; run it: container create NAME --image {image.short}")
    print(f"(what {name} has in /workspace and other mounted directories is not in the image)")
    return 0
