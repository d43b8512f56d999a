"""Where frames come from: ``capture`` (video files, cameras, streams; a reader thread that drops,
never blocks) and ``preprocess`` (a frame to the backbone's input tensor, as its card says)."""
