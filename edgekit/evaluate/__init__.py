"""Host-side accuracy of the detections an agent returns (`result["task_output"]`).

`coco` scores them against COCO-format box annotations, `reference` against the detections of an FP32
reference run on the same frames, both with pycocotools; `host` ties them to `edgekit.run` (checks before
the run, metrics into the result after it); `draw` puts boxes on frames for the HTML report. Nothing here
is imported by `import edgekit`: pycocotools and OpenCV load when a run or report needs them.
"""
