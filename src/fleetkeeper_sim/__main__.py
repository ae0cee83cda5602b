from fleetkeeper_sim.cli import main

main()
