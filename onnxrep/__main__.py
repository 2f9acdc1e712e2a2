from onnxrep.cli import main

main()
