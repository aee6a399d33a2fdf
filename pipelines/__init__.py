"""The pipeline package, in layers (``.importlinter``): ``cli`` dispatches the commands;
``flows`` chain jobs; ``jobs`` are the commands' work; ``formats`` are the export formats;
``machinery`` is what jobs share."""
