from modelport.cli.main import main

if __name__ == "__main__":  # a worker process of a node imports this module without running it
    main()
