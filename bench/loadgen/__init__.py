"""Helpers of the SFU capacity benchmark (bench/sfu_capacity.py).

``clip``     the pre-encoded media (VP8 640x480 30 fps ~1 Mbit/s, Opus), made once with ffmpeg and cached.
``tracks``   aiortc tracks that send that media packet by packet, without encoding.
``taps``     what publishers and subscribers record: send times, receive times, loss injection, NACK/RTX.
``cpu``      CPU time of processes (user+sys) read from /proc.
``janus``    a small client of Janus's HTTP API (sessions, handles, long-poll events).
``targets``  one adapter per system under test: classmesh, janus, mediarelay.
``mediarelay_sfu``  the aiortc MediaRelay baseline server (decode once, encode per subscriber).
``workers``  the generator processes (publishers, subscribers) and their control channel.
``report``   turns what the workers recorded into the JSON figures.
"""
