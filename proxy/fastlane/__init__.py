"""The fast lane: plain bodiless keep-alive requests relayed below aiohttp's web layer.

A client connection starts in a `FastLane` and stays there while its
requests qualify; the first one that does not is handed, with the lane's
decision if it made one, to aiohttp's path for the rest of the connection.
"""

from proxy.fastlane.lane import FastLane, LaneHost

__all__ = ["FastLane", "LaneHost"]
