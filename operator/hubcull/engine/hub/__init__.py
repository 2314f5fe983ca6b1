"""Reading the Hub: its REST API client, the model of its users and servers, and the snapshot
a sweep decides on."""
