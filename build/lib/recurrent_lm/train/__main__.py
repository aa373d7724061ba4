from recurrent_lm.train.cli import main

main()
