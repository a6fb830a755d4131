"""A test RTSP server on 127.0.0.1 (GStreamer's gst-rtsp-server, run with Debian's python3 and python3-gi).

    /usr/bin/python3 tests/helpers/rtsp_server.py PORT   -> rtsp://127.0.0.1:PORT/cam (MJPEG over RTP, 30 fps)

Prints "ready" once it listens; stops on SIGTERM.
"""
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=30/1,format=I420 "
                   "! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit("cannot listen")
loop = GLib.MainLoop()
signal.signal(signal.SIGTERM, lambda *a: loop.quit())
print("ready", flush=True)
loop.run()
