"""Running a node until Ctrl-C, SIGTERM or an external shutdown, then cleaning up."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import (
    SignalHandlerOptions,
    get_current_signal_handlers_options,
    install_signal_handlers,
    uninstall_signal_handlers,
)

__all__ = ["spin_until_shutdown", "spin_in_background"]


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _handle_sigterm() -> None:
    """SIGTERM ends spinning like Ctrl-C, even on an idle node.

    rclpy's C handler wakes the executor and then calls the handler that was installed
    before it. Installed after a library's (pycolmap's glog aborts the process on SIGTERM with
    a stack dump), rclpy's is reinstalled on top of Python's, which raises KeyboardInterrupt
    in the main thread once the woken executor returns to Python. A library imported after
    this (pycolmap comes with the model code) would put its handler on top again: a node
    imports such code before it starts spinning.
    """
    options = get_current_signal_handlers_options()
    if options not in (SignalHandlerOptions.SIGTERM, SignalHandlerOptions.ALL):
        signal.signal(signal.SIGTERM, _raise_interrupt)  # no rclpy handler to wake anything
        return
    uninstall_signal_handlers()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    install_signal_handlers(options)


def spin_until_shutdown(node: Node, executor: Executor,
                        on_exit: Callable[[], None] | None = None) -> int:
    """Spin ``node`` on ``executor``; SIGTERM ends it like Ctrl-C. Returns exit status 0.

    Call it after ``rclpy.init``.
    """
    _handle_sigterm()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_exit is not None:
            on_exit()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def spin_in_background(executor: Executor, context: Context) -> threading.Thread:
    """Spin ``executor`` on a daemon thread until ``context`` shuts down (probes, benchmarks:
    the caller's thread publishes and waits meanwhile). Join it after the shutdown."""

    def spin() -> None:
        try:
            while context.ok():
                executor.spin_once(timeout_sec=0.02)
        except ExternalShutdownException:
            pass  # the context was shut down: done

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread
