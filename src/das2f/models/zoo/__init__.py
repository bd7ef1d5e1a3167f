"""The field's published MS + PAN classifiers, each in das2f's own code from its paper and its public reference
code (read, never copied), each a ``net=<name>`` option (conf/net/<name>.yaml). Every one takes the dataset's
geometry (das2f.models.base) and is compared with DAS²F under one protocol by ``experiment=zoo``."""
