"""`mizzen get KIND [NAME] -w | --watch-only`: the table, then a row per change as it happens.

The initial listing is read with List and the watch starts at that list's
resource_version, so no change between the two is missed or shown twice.
With -o json/yaml/name every changed object is printed in that format
instead of a row. Ctrl-C (SIGINT), SIGTERM or a closed stdout pipe end the
command with exit code 0 and no traceback; store errors leave like any other command's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from mizzen.api.kinds import KindInfo
from mizzen.api.manifest import dump_json, dump_yaml
from mizzen.cli import tables
from mizzen.cli.errors import CommandError
from mizzen.client.objects import ObjectsClient


class WatchTable:
    """Aligned rows printed over time: columns keep the widths seen so far and only grow."""

    def __init__(self) -> None:
        self.widths: list[int] = []

    def lines(self, rows: Sequence[Sequence[str]]) -> str:
        for row in rows:
            for i, cell in enumerate(row):
                if i == len(self.widths):
                    self.widths.append(0)
                self.widths[i] = max(self.widths[i], len(cell))
        out = []
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, self.widths, strict=False)]
            out.append(tables.GAP.join(cells).rstrip())
        return "".join(line + "\n" for line in out)


class Printer:
    """Writes objects in the chosen output: a table (header once) or json/yaml/name per object."""

    def __init__(
        self,
        info: KindInfo,
        output: str | None,
        with_namespace: bool,
        write: Callable[[str], object],
        clock: Callable[[], float] = time.time,
        *,
        events: bool = False,
    ) -> None:
        self.info = info
        self.events = events
        self.output = output
        self.with_namespace = with_namespace
        self.write = write
        self.clock = clock
        self.table = WatchTable()
        self.started = False

    def objects(self, objects: Sequence[Any], event: str = "ADDED") -> None:
        """Print objects; with --output-watch-events each is prefixed by its event type."""
        if not objects:
            return
        tag = f"{event} " if self.events else ""
        if self.output == "name":
            self.write("".join(f"{tag}{self.info.singular}/{o.metadata.name}\n" for o in objects))
        elif self.output == "json":
            for obj in objects:
                text = dump_json([obj])
                if self.events:
                    text = json.dumps({"type": event, "object": json.loads(text)}, indent=2) + "\n"
                self.write(text)
        elif self.output == "yaml":
            for obj in objects:
                text = dump_yaml([obj])
                if self.events:
                    inner = "".join(f"  {line}\n" for line in text.splitlines())
                    text = f"type: {event}\nobject:\n{inner}"
                self.write(("---\n" if self.started else "") + text)
                self.started = True
        else:
            rows = tables.table(
                self.info,
                objects,
                now=self.clock(),
                wide=self.output == "wide",
                with_namespace=self.with_namespace,
            )
            if self.events:
                rows = [["EVENT", *rows[0]], *([event, *row] for row in rows[1:])]
            self.write(self.table.lines(rows if not self.started else rows[1:]))
        self.started = True


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def follow(
    client: ObjectsClient,
    info: KindInfo,
    namespace: str,
    args: argparse.Namespace,
    printer: Printer,
) -> None:
    """List (unless --watch-only), then print every change until cancelled."""
    selector = args.field_selector
    if args.name:
        selector = f"metadata.name={args.name}"
    rv = ""
    if not args.watch_only:
        listed = await client.list(
            info, namespace, label_selector=args.selector, field_selector=selector
        )
        if args.name and not listed.items:
            raise CommandError(f'{info.plural} "{args.name}" not found')
        printer.objects(listed.items)
        rv = listed.resource_version
    async for kind, obj in client.watch(
        info,
        namespace,
        label_selector=args.selector,
        field_selector=selector,
        resource_version=rv,
    ):
        if kind != "BOOKMARK":
            printer.objects([obj], kind)


async def watch_until_interrupted(
    client: ObjectsClient,
    info: KindInfo,
    namespace: str,
    args: argparse.Namespace,
    everywhere: bool,
) -> int:
    """follow() until SIGINT or SIGTERM, which end it with 0."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, interrupt)
    try:
        events = bool(getattr(args, "output_watch_events", False))
        printer = Printer(info, args.output, everywhere, _write, events=events)
        await follow(client, info, namespace, args, printer)
    except asyncio.CancelledError:
        if not interrupted:
            raise
        task.uncancel()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep the exit-time flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0
